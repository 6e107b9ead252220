"""The demo workflows (order fulfilment, expense approval), their simulated services, and the benchmark flows."""
