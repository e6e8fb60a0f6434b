"""Scaling-law pilot pipeline: plan pilot runs, train them, fit a law, recommend (N, D)."""
