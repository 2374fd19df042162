"""SQLModel tables and their public shapes, one module per entity.

Importing this package registers every table on `SQLModel.metadata`.
"""

from service.entities.feedback import Feedback, FeedbackCreate, FeedbackPublic, FeedbackStatus
from service.entities.job import JobRecord, JobState
from service.entities.label import (
    AgreementStats,
    Label,
    LabelPublic,
    LabelSource,
    ReviewerStats,
)
from service.entities.model_version import (
    ModelStatus,
    ModelVersion,
    ModelVersionBase,
    ModelVersionPublic,
)
from service.entities.outbox import OutboxItem
from service.entities.prediction import (
    Prediction,
    PredictionCreate,
    PredictionPublic,
    PredictionRecord,
    PredictionStatus,
    ShadowPrediction,
)
from service.entities.production_change import (
    ProductionAction,
    ProductionChange,
    ProductionChangePublic,
)
from service.entities.review import (
    EarlierLabel,
    ReviewReason,
    ReviewStage,
    ReviewStatus,
    ReviewTask,
    ReviewTaskPublic,
)
from service.entities.reviewer import Reviewer
from service.entities.snapshot import DatasetSnapshot

__all__ = [
    "AgreementStats",
    "DatasetSnapshot",
    "EarlierLabel",
    "Feedback",
    "FeedbackCreate",
    "FeedbackPublic",
    "FeedbackStatus",
    "JobRecord",
    "JobState",
    "Label",
    "LabelPublic",
    "LabelSource",
    "ModelStatus",
    "ModelVersion",
    "ModelVersionBase",
    "ModelVersionPublic",
    "OutboxItem",
    "Prediction",
    "PredictionCreate",
    "PredictionPublic",
    "PredictionRecord",
    "PredictionStatus",
    "ProductionAction",
    "ProductionChange",
    "ProductionChangePublic",
    "ReviewReason",
    "ReviewStage",
    "ReviewStatus",
    "ReviewTask",
    "ReviewTaskPublic",
    "Reviewer",
    "ReviewerStats",
    "ShadowPrediction",
]
