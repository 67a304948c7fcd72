"""Model extraction: a copy of the target, bought with queries."""
