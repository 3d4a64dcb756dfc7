"""Analysis: feature reuse, representation geometry, penalties, symmetries, regime diagnosis."""
