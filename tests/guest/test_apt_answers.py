"""apt-cache's answers are kept while apt's lists and configuration are unchanged."""

from __future__ import annotations

import os
import subprocess

import pytest
from nixos_test_ng.guest import apt

STANZA = "Package: foo\nVersion: 1.0\nArchitecture: amd64\nSHA256: ab\nSize: 3\n\n"


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    lists, etc = tmp_path / "lists", tmp_path / "etc"
    lists.mkdir()
    etc.mkdir()
    (lists / "deb.debian.org_Packages").write_text("one")
    monkeypatch.setattr(apt, "APT_STATE", (lists, etc))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[list[str]] = []
    answer = {"status": 0}

    def run(cmd, **kw):
        calls.append(cmd)
        if answer["status"]:
            return subprocess.CompletedProcess(cmd, answer["status"], "", "E: no lists")
        return subprocess.CompletedProcess(cmd, 0, STANZA, "")

    monkeypatch.setattr(apt, "run", run)
    return lists, calls, answer


def test_an_answer_is_reused_until_the_lists_change(fake_apt):
    lists, calls, _ = fake_apt
    assert apt._show(["foo"])["foo"]["Version"] == "1.0"
    assert apt._show(["foo"])["foo"]["Version"] == "1.0"
    assert len(calls) == 1
    (lists / "deb.debian.org_Packages").write_text("two, after apt-get update")
    apt._show(["foo"])
    assert len(calls) == 2


def test_other_names_are_another_question(fake_apt):
    _, calls, answer = fake_apt
    apt._show(["foo"])
    answer["status"] = 100
    with pytest.raises(apt.AptError, match="no candidate for `bar`"):
        apt._show(["bar"])
    assert len(calls) == 2


def test_a_failed_answer_is_not_kept(fake_apt):
    _, calls, answer = fake_apt
    answer["status"] = 100
    for _ in range(2):
        with pytest.raises(apt.AptError, match="E: no lists"):
            apt._show(["foo"])
    assert len(calls) == 2
    answer["status"] = 0
    assert apt._show(["foo"])["foo"]["Version"] == "1.0"
    assert len(calls) == 3


def test_another_apt_cache_program_is_asked_again(fake_apt, tmp_path, monkeypatch):
    _, calls, _ = fake_apt
    apt._show(["foo"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    other = bin_dir / "apt-cache"
    other.write_text("#!/bin/sh\nexit 100\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    apt._show(["foo"])
    assert len(calls) == 2
