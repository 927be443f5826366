"""The appliance: image intake, runtimes, triage and the command line (stands on models/ and optimize/)."""
