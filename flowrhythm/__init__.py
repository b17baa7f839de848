"""flowrhythm: asynchronous job pipelines with auto-scaling workers, on asyncio and trio."""

from ._adaptive import Adaptive as Adaptive
from ._adaptive import LimitChange as LimitChange
from ._capacity import Capacity as Capacity
from ._capacity import Strategy as Strategy
from ._capacity import UtilizationCapacity as UtilizationCapacity
from ._decorators import job_capacity as job_capacity
from ._decorators import job_name as job_name
from ._decorators import workers as workers
from ._errors import ErrorItem as ErrorItem
from ._errors import LastWorkItem as LastWorkItem
from ._errors import Overloaded as Overloaded
from ._errors import RouteToErrorQueue as RouteToErrorQueue
from ._errors import StopProcessing as StopProcessing
from ._flow import Flow as Flow
from ._monitor import monitor as monitor
from ._monitor import render_stats as render_stats
from ._options import Batch as Batch
from ._options import Retry as Retry
from ._processors import ProcessorFactory as ProcessorFactory
from ._recorder import Timeline as Timeline
from ._recorder import TimelinePoint as TimelinePoint
from ._recorder import record as record
from ._run._run import FlowResults as FlowResults
from ._run._run import RunningFlow as RunningFlow
from ._scaling import FixedStrategy as FixedStrategy
from ._scaling import QueueDepthStrategy as QueueDepthStrategy
from ._scaling import ScalingEvent as ScalingEvent
from ._scaling import ScalingSample as ScalingSample
from ._scaling import ScalingStrategy as ScalingStrategy
from ._scaling import UtilizationStrategy as UtilizationStrategy
from ._stats import FlowStats as FlowStats
from ._stats import JobStats as JobStats
from ._stats import StatsSource as StatsSource

__all__ = [
    "Adaptive",
    "Batch",
    "Capacity",
    "ErrorItem",
    "FixedStrategy",
    "Flow",
    "FlowResults",
    "FlowStats",
    "JobStats",
    "LastWorkItem",
    "LimitChange",
    "Overloaded",
    "ProcessorFactory",
    "QueueDepthStrategy",
    "Retry",
    "RouteToErrorQueue",
    "RunningFlow",
    "ScalingEvent",
    "ScalingSample",
    "ScalingStrategy",
    "StatsSource",
    "StopProcessing",
    "Strategy",
    "Timeline",
    "TimelinePoint",
    "UtilizationCapacity",
    "UtilizationStrategy",
    "job_capacity",
    "job_name",
    "monitor",
    "record",
    "render_stats",
    "workers",
]


def _fixup_module_metadata() -> None:
    # Present every public name as flowrhythm.X (as trio does), so reprs, pickles
    # and the docs show the public path rather than the private module.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("flowrhythm."):
            obj.__module__ = "flowrhythm"


_fixup_module_metadata()
del _fixup_module_metadata
