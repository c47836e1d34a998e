"""Uplink to Cumulocity IoT: SmartREST 2.0 encoding/decoding and MQTT transport."""
