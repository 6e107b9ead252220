"""Every write on human tasks, by seam: the people's actions (``tasks``), escalations answered
(``escalations``), the engine's port (``port``), deadlines (``deadlines``), people changing under a task
(``people``); what they share is in ``base``."""
