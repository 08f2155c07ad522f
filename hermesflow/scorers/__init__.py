"""Scorers: caption similarity (understanding preferences) and, later, self-VQA judges."""
