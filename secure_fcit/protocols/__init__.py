"""The federation's protocols: typed messages and their codec, secure-aggregation interface,
sans-IO round machines (Coordinator, Worker) and the in-memory transport that drives them.

Module map: ``messages`` (what travels), ``codec`` (how it travels), ``layout`` (the vectors inside
secure sums), ``aggregation`` (``SecureAggregator``/``ClientAggregator``, ``Aggregate``, the
insecure plaintext baseline), ``states`` (the state tables), ``coordinator`` / ``worker`` (the
machines), ``interfaces`` (Learner, Organizer, Schedule), ``memory`` (in-process transport).
"""

from __future__ import annotations

from secure_fcit.protocols.aggregation import (
    AGGREGATION_KINDS,
    Aggregate,
    AggregationRound,
    ClientAggregator,
    Outgoing,
    PlaintextAggregator,
    PlaintextClient,
    SecureAggregator,
)
from secure_fcit.protocols.codec import decode, encode
from secure_fcit.protocols.coordinator import DEFAULT_MAX_MESSAGE_SIZE, Coordinator
from secure_fcit.protocols.interfaces import (
    Learner,
    Organizer,
    RoundOutcome,
    ScenarioSchedule,
    Schedule,
    StagePlan,
)
from secure_fcit.protocols.memory import Fault, History, Injection, MemoryNetwork, run_federation
from secure_fcit.protocols.messages import (
    COORDINATOR_ID,
    MESSAGE_TYPES,
    Abort,
    Contribution,
    Message,
    Refusal,
    RoundEnd,
    RoundStart,
    SlotPlan,
    StageEnd,
    StageStart,
    StageSync,
    TokenUpload,
    UpdateUpload,
    register_message,
)
from secure_fcit.protocols.worker import Worker

__all__ = [
    "AGGREGATION_KINDS",
    "COORDINATOR_ID",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MESSAGE_TYPES",
    "Abort",
    "Aggregate",
    "AggregationRound",
    "ClientAggregator",
    "Contribution",
    "Coordinator",
    "Fault",
    "History",
    "Injection",
    "Learner",
    "MemoryNetwork",
    "Message",
    "Organizer",
    "Outgoing",
    "PlaintextAggregator",
    "PlaintextClient",
    "Refusal",
    "RoundEnd",
    "RoundOutcome",
    "RoundStart",
    "ScenarioSchedule",
    "Schedule",
    "SecureAggregator",
    "SlotPlan",
    "StageSync",
    "StageEnd",
    "StagePlan",
    "StageStart",
    "TokenUpload",
    "UpdateUpload",
    "Worker",
    "decode",
    "encode",
    "register_message",
    "run_federation",
]
