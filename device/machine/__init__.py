"""What the appliance asks of the machine it runs on: the time as it is written everywhere (clock),
what the CPU and installed libraries are (facts), and how removable drives and folders are walked
(drive_walk)."""
