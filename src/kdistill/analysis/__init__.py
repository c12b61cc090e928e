"""The analysis, without torch: statistics over seeds, the report stage and ``kdistill review``."""
