"""`fab TASK` in a checkout: the tasks are deploy/tasks.py (installed from a wheel: `edge-llm-fab TASK`)."""
from deploy.tasks import *  # noqa: F401,F403  (Fabric collects every task this module holds)
