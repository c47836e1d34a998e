"""c8ysim: simulated energy devices connected to Cumulocity IoT over MQTT."""

__version__ = "0.1.0"
