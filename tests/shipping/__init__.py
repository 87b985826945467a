"""Shipping checks: the Dockerfile and the Helm chart (lint, render, schema, assertions)."""
