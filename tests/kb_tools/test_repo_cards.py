"""The cards shipped in kb/ all validate."""

from __future__ import annotations

from kb_tools.kb import check_knowledge_base
from kb_tools.report import format_text

from kb_helpers import REPO_ROOT


def test_every_repository_card_validates():
    result = check_knowledge_base(REPO_ROOT)

    assert result.files_checked > 0, "no cards found in kb/model_cards or kb/paper_cards"
    assert result.error_count == 0, "\n" + format_text(result.diagnostics, result.files_checked)
    assert len(result.knowledge_base.cards()) == result.files_checked


def test_repository_has_models_and_papers():
    result = check_knowledge_base(REPO_ROOT)

    assert result.knowledge_base.models, "no valid model cards in kb/model_cards"
    assert result.knowledge_base.papers, "no valid paper cards in kb/paper_cards"
