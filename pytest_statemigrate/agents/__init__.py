"""Agent access from the plugin's processes: the run's own agent, or none (the disk tier used
in-process). Imports no pytest."""
