"""Live capture from attached imagers: sources (URIs), one capture thread per source keeping only the
newest frame, a watchdog that reconnects stalled sources, camera-frame quality checks and a live
triage loop that never falls behind. The kiosk serves it (device/kiosk)."""
