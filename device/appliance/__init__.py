"""One running appliance: the core's study service with the rooms that feed it (live capture, the
DICOM node) and bundle updates' start-up recovery, opened, health-checked and closed together
(running.py), and where the web finds it (context.py)."""
