"""Cards and the knowledge base they form, independent of how they were loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_KINDS = ("model", "paper")

# Folder under kb/ that contains each kind of card.
CARD_DIRS = {"model": "model_cards", "paper": "paper_cards"}


@dataclass(frozen=True)
class Card:
    """One validated card: its kind, id, source file and data as plain JSON values."""

    kind: str
    id: str
    path: Path
    data: dict[str, Any]


@dataclass
class KnowledgeBase:
    """All cards by kind and id, with the links between models and papers in both directions."""

    root: Path
    models: dict[str, Card] = field(default_factory=dict)
    papers: dict[str, Card] = field(default_factory=dict)

    def cards(self) -> list[Card]:
        """Return every card, models first, each kind sorted by id."""
        return [self.models[k] for k in sorted(self.models)] + [
            self.papers[k] for k in sorted(self.papers)
        ]

    def papers_for_model(self, model_id: str) -> list[Card]:
        """Return the papers a model card cites plus those that name the model, sorted by id."""
        ids = set(self.models[model_id].data.get("papers", []))
        ids.update(p.id for p in self.papers.values() if model_id in p.data.get("models", []))
        return [self.papers[i] for i in sorted(ids) if i in self.papers]

    def models_for_paper(self, paper_id: str) -> list[Card]:
        """Return the models a paper card names plus those that cite the paper, sorted by id."""
        ids = set(self.papers[paper_id].data.get("models", []))
        ids.update(m.id for m in self.models.values() if paper_id in m.data.get("papers", []))
        return [self.models[i] for i in sorted(ids) if i in self.models]
