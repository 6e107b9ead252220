"""Every write of the engine lives here: lock, check, transition, save, audit, then dispatch and broadcast."""
