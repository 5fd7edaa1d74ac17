"""A physically grounded synthetic world written in the real formats (see README, "The synthetic world")."""
