"""Bedside as a DICOM node: the C-STORE SCP that modalities push images to (receiver.py), and the
outbox that sends the results back (outbox.py, sender.py). The running appliance opens the node
(device/appliance/running.py); the node makes studies through the core's study service."""
