"""Fixed numbers and strings of the fake platform.

Size limits (ref §3.1, §5), the default credentials, the platform version the
tenant reports, and the ``s/e`` error texts it answers with.
"""

MAX_MESSAGE_BYTES = 16184          # whole MQTT packet incl. header (ref §5)
WARN_PAYLOAD_BYTES = 16000         # builder limit used by thin-edge (ref §3.1)
MAX_PACKET_BYTES = 1024 * 1024     # memory bound per packet of the fake itself
MAX_WRITE_BUFFER = 1024 * 1024     # close a client that does not read
PLATFORM_VERSION = "1020.0.0"

DEFAULT_USERNAME = "t100/c8ysim"
DEFAULT_PASSWORD = "secret"

ERR_NO_TEMPLATE = "No static template for this message id"
ERR_DEVICE_EXISTS = "Device already existing"
ERR_MALFORMED = "Malformed request line"
ERR_ARGS = "Wrong number of arguments"
