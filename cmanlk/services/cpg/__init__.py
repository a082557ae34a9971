"""CPG (service 2): closed process groups — `service` is the state machine, `wire` its exec messages."""
