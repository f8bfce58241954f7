"""Production serving: continuous batching, admission control, deadlines and graceful drain.

Use cases take a :class:`Serving` (``app.state.serving``) and wrap model work as::

    deadline = serving.deadline(requested_ms)             # per request (the route builds it)
    async with serving.admission.slot(lm.name, deadline):  # 429 / 504 / client gone, before tokenizing
        ...                                                # tokenize, check limits
        output, queue_s = await serving.scheduler(lm).batcher.generate(ids, params, deadline=deadline)
"""

from service.serving.admission import Admission
from service.serving.batcher import Batcher
from service.serving.deadline import Deadline
from service.serving.drain import Drain
from service.serving.runtime import Serving
from service.serving.scheduler import Checkpoint, Scheduler, Stopped

__all__ = ["Admission", "Batcher", "Checkpoint", "Deadline", "Drain", "Scheduler", "Serving", "Stopped"]
