"""Model versions: which is active for which rule, shadow runs beside it with their agreement, and drift of
the models' inputs and outputs against their training reference."""
