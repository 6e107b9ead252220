from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Human tasks"

    def ready(self) -> None:
        # Imported here, not at the top: an AppConfig module is imported before the models are ready.
        from django.core import checks

        from approvals import notifications, signals, timezones
        from approvals.checks import ladder_groups
        from approvals.services.port import ApprovalsHumanTasks
        from orchestrator.ports import register_human_tasks
        from orchestrator.signals import instance_finished

        signals.connect()
        timezones.connect()
        # The engine reaches people only through its port, and tells the initiator through its signal.
        register_human_tasks(ApprovalsHumanTasks())
        instance_finished.connect(notifications.tell_initiator, dispatch_uid="baton-tell-initiator")
        checks.register(ladder_groups)
