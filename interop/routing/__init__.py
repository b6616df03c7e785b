"""Routing: which AI app a ready study or a patient's completed lab set goes to (rules as data)."""
