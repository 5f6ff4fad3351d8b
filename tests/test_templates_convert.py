"""Every UI-format workflow of ComfyUI's templates package converts; those that use only our nodes
also validate, but for model and input files this machine does not have.

The runnable list grows with the registry, so it is computed, not pinned (tests/test_templates_e2e.py
pins the ones it runs); `python -m tests.test_templates_convert` prints it.
"""
from __future__ import annotations

import pytest

from graph.workflow_formats import ui_to_api
from tests.templates_env import load_template, require_templates_package, runnable_templates, template_names

# Validation errors a template may have here: files it names are not on this machine.
MISSING_FILE_ERRORS = {"value_not_in_list"}


@pytest.fixture(scope="module")
def registry():
    require_templates_package()
    from nodes import load_registry

    return load_registry()


def _ui_templates() -> list[str]:
    names = []
    for name in template_names():
        workflow = load_template(name)
        if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
            names.append(name)
    return names


def test_every_ui_template_converts(registry):
    names = _ui_templates()
    assert len(names) > 600  # the pinned package holds 644 UI-format templates
    failures = {}
    for name in names:
        try:
            prompt = ui_to_api(load_template(name), registry.object_info_for)
        except ValueError as e:
            failures[name] = str(e)
            continue
        assert prompt and all("class_type" in n for n in prompt.values()), name
    assert failures == {}


def _file_problems_only(checked) -> dict:
    """node id -> the errors that are not about missing files."""
    other = {}
    for node_id, entry in checked.node_errors.items():
        bad = [e for e in entry["errors"] if e["type"] not in MISSING_FILE_ERRORS
               and "Invalid image file" not in e.get("details", "")]
        if bad:
            other[node_id] = bad
    return other


def runnable_report(registry) -> dict:
    """{template: node errors other than missing files} for the templates using only our nodes."""
    from graph.validate import validate_prompt

    report = {}
    for name in runnable_templates(registry.class_types()):
        prompt = ui_to_api(load_template(name), registry.object_info_for)
        report[name] = _file_problems_only(validate_prompt(prompt, registry))
    return report


def test_templates_with_only_our_nodes_validate(registry):
    report = runnable_report(registry)
    assert len(report) >= 3
    assert {name: errors for name, errors in report.items() if errors} == {}


if __name__ == "__main__":
    from nodes import load_registry

    for template, problems in runnable_report(load_registry()).items():
        print(template, "ok" if not problems else problems)
