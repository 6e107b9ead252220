"""Workflow definitions shipped with Baton: the two demo workflows and the benchmark flows."""
