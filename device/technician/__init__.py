"""The technician area: a protected part of the kiosk for the people who install and maintain it
(login, sessions, API tokens, status, capture and DICOM checks, logs and a diagnostics archive),
and the access rule for the whole kiosk when it listens beyond loopback (gate.py)."""
