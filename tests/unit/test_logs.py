import json
import logging

from libs.common.logs import REDACTED, JsonFormatter, log_event, redact


def record(logger: logging.Logger, fn) -> dict:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, r: logging.LogRecord) -> None:
            lines.append(JsonFormatter("svc").format(r))

    logger.handlers[:] = [Capture()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fn()
    (line,) = lines
    return json.loads(line)


def test_one_json_line_with_fields_at_top_level():
    log = logging.getLogger("t.fields")
    out = record(log, lambda: log_event(log, "order.retry", correlation_id="c1", msg="clash", tries=2))
    assert out["event"] == "order.retry" and out["service"] == "svc" and out["level"] == "info"
    assert out["correlation_id"] == "c1" and out["tries"] == 2
    assert out["f_msg"] == "clash"  # a LogRecord attribute name is kept under a prefix, not lost


def test_terminal_only_extras_are_dropped():
    log = logging.getLogger("t.uvicorn")
    out = record(
        log, lambda: log.info("Started server process [%d]", 7, extra={"color_message": "\x1b[36m%d\x1b[0m"})
    )
    assert out["event"] == "Started server process [7]" and "color_message" not in out


def test_registered_secrets_are_masked_whoever_logs_them():
    redact("hunter2-api-key", 'sec"ret\\value', "", None, "abc")  # too short or empty: ignored
    log = logging.getLogger("t.ccxt")
    headers = {"X-MBX-APIKEY": "hunter2-api-key", "s": 'sec"ret\\value', "short": "abc"}
    out = record(log, lambda: log.info("POST /fapi/v1/order headers %s", headers, extra={"h": headers}))
    line = json.dumps(out)
    assert "hunter2-api-key" not in line and "sec" not in line
    assert out["event"].count(REDACTED) == 2 and "abc" in out["event"]
