"""CLI conventions: version/--version, help, unknown commands, exit codes, and the completion
scripts and man page rendered from the command-line definition (every command listed; bash
completion exercised for real; the man page renders without a groff warning)."""
import json
import os
import re
import shutil
import subprocess

import pytest

from harness.meshlane import meshlane_bin


def run(*args, **kwargs):
    return subprocess.run([meshlane_bin(), *args], capture_output=True, text=True, timeout=30,
                          **kwargs)


def subcommands():
    """The commands `meshlane help` lists (CLI11's "SUBCOMMANDS:" section)."""
    out = run("help").stdout
    section = re.split(r"(?im)^subcommands:\s*$", out)[1]
    names = []
    for line in section.splitlines():
        match = re.match(r"^  (\S+)\s", line)
        if match:
            names.append(match.group(1))
        elif line.strip() and not line.startswith(" "):
            break
    assert "enroll" in names and "version" in names, out
    return names


def build_share_dir():
    """<build>/share next to the binary, where the build renders completions and man page."""
    path = os.path.join(os.path.dirname(meshlane_bin()), "share")
    return path if os.path.isdir(path) else None


def test_version_and_version_flag_agree():
    plain, flag = run("version"), run("--version")
    assert plain.returncode == 0 and flag.returncode == 0, (plain.stderr, flag.stderr)
    assert plain.stdout == flag.stdout
    lines = dict(line.split(":", 1) for line in plain.stdout.splitlines()[1:])
    assert re.match(r"^meshlane \d+\.\d+\.\d+$", plain.stdout.splitlines()[0]), plain.stdout
    assert lines["revision"].strip() not in ("", "unknown"), plain.stdout
    assert "RelWithDebInfo" in lines["build"] or "Release" in lines["build"], plain.stdout
    assert lines["libbpf"].strip(), plain.stdout


def test_version_json_without_agent_says_so(tmp_path):
    result = run("--server", str(tmp_path / "none.sock"), "version", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["version"] and info["revision"] and info["kernel"].startswith("Linux ")
    assert info["agent"]["reachable"] is False and info["agent"]["error"], info


def test_version_json_with_agent_has_probed_features(agent):
    info = json.loads(agent.cli_ok("version", "--json").stdout)
    assert info["agent"]["reachable"] is True, info
    assert info["agent"]["features"], info
    assert info["agent"]["version"] == info["version"], info


def test_help_lists_commands_and_exit_codes():
    result = run("help")
    assert result.returncode == 0
    for code in ("0", "1", "2", "3", "4"):
        assert re.search(rf"^  {code}  \S", result.stdout, re.M), result.stdout
    enroll = run("help", "enroll")
    assert enroll.returncode == 0 and "--cgroup" in enroll.stdout, enroll.stdout
    assert run("enroll", "--help").stdout == enroll.stdout


@pytest.mark.parametrize("args,expected", [
    (["stauts"], "unknown command 'stauts'; did you mean 'status'?"),
    (["worklods"], "did you mean 'workloads'?"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["help", "enrol"], "did you mean 'enroll'?"),
    (["status", "--bogus"], "meshlane status: unexpected argument '--bogus'"),
    (["status", "extra"], "meshlane status: unexpected argument 'extra'"),
    (["--bogus"], "meshlane: unexpected argument '--bogus' (meshlane help lists"),
])
def test_unknown_command_or_argument_is_a_usage_error(args, expected):
    result = run(*args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert expected in result.stderr, result.stderr
    assert "A subcommand is required" not in result.stderr


def test_no_command_prints_usage():
    result = run()
    assert result.returncode == 2
    assert "Subcommands:" in result.stderr or "SUBCOMMANDS:" in result.stderr, result.stderr


def test_completions_and_man_page_list_every_command():
    names = subcommands()
    bash, zsh, man = run("completion", "bash"), run("completion", "zsh"), run("man")
    assert bash.returncode == zsh.returncode == man.returncode == 0
    for name in names:
        assert re.search(rf"^    {re.escape(name)}\) words=", bash.stdout, re.M), name
        assert f"'{name}:" in zsh.stdout, name
        assert f'.SS "meshlane {name}' in man.stdout, name
    # What the build rendered (and `cmake --install` ships) is what the binary renders now.
    share = build_share_dir()
    if share:
        for rel, text in (("bash-completion/meshlane", bash.stdout), ("zsh/_meshlane", zsh.stdout),
                          ("man/meshlane.8", man.stdout)):
            with open(os.path.join(share, rel)) as f:
                assert f.read() == text, f"{share}/{rel} is stale"


def bash_complete(script, line):
    """COMPREPLY for the command line `line` (cursor at its end), in a real bash."""
    words = line.split(" ")
    program = (f"{script}\n"
               f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               "_meshlane\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PATH": os.path.dirname(meshlane_bin())
                                             + ":" + os.environ.get("PATH", "")})
    assert result.returncode == 0, result.stderr
    return set(filter(None, result.stdout.splitlines()))


def test_bash_completion_completes():
    script = run("completion", "bash").stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "status" in bash_complete(script, "meshlane sta")
    assert {"workload", "workloads"} <= bash_complete(script, "meshlane work")
    assert {"--cgroup"} <= bash_complete(script, "meshlane enroll --cg")
    assert {"--server"} <= bash_complete(script, "meshlane status --ser")
    assert bash_complete(script, "meshlane enroll web --startup-policy p") == {"passthrough"}
    assert bash_complete(script, "meshlane completion z") == {"zsh"}
    assert "enroll" in bash_complete(script, "meshlane help enr")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completion_parses():
    script = run("completion", "zsh").stdout
    result = subprocess.run(["zsh", "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_man_page_renders_cleanly():
    page = run("man").stdout
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, text=True,
                            capture_output=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = subprocess.run(["groff", "-man", "-Tutf8"], input=page, text=True,
                          capture_output=True).stdout
    text = re.sub(r".\x08", "", text)
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "GLOBAL OPTIONS", "COMMANDS",
                    "EXIT STATUS", "FILES"):
        assert re.search(rf"^{heading}$", text, re.M), heading
    assert "--exclude-inbound-ports" in text.replace("‐", "-")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completion_completes(tmp_path):
    (tmp_path / "_meshlane").write_text(run("completion", "zsh").stdout)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness", "scripts",
                          "zsh-complete.zsh")

    def complete(line):
        result = subprocess.run(["zsh", "-f", script, str(tmp_path),
                                 os.path.dirname(meshlane_bin()), line],
                                capture_output=True, text=True, timeout=30)
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[\r\x07\x08]", " ", result.stdout)

    assert "meshlane status" in complete("meshlane sta")
    shown = complete("meshlane enroll web --startup-policy ")
    assert "passthrough" in shown and "refuse" in shown, shown
    assert "meshlane help enroll" in complete("meshlane help enr")


SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SOURCE, ".git")) and
                    not os.path.isfile(os.path.join(SOURCE, ".git")),
                    reason="not a git checkout")
def test_build_info_revision_from_a_tarball_without_git(tmp_path):
    """`git archive` fills cli/REVISION (export-subst): a build from the tarball, which has no
    .git, still reports the commit."""
    archive = subprocess.run(["git", "-C", SOURCE, "archive", "HEAD", "cli/"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    out = tmp_path / "build_info.cpp"
    subprocess.run(["cmake", f"-DSRC={tmp_path}", f"-DOUT={out}", "-DVERSION=0", "-DBUILD_TYPE=x",
                    "-DCOMPILER=x", "-DFLAGS=x", "-DLIBBPF=x", "-DARCH=x", "-P",
                    str(tmp_path / "cli" / "build_info.cmake")], check=True)
    head = subprocess.run(["git", "-C", SOURCE, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert f'R"x({head[:12]})x"' in out.read_text()
