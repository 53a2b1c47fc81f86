"""The MQTT door (MQTT 3.1.1 and 5.0): ``codec`` is its sans-I/O packet codec."""
