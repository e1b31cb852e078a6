#!/usr/bin/env python3
"""Checks that every metric the alert rules and the Grafana dashboard query is one the agent
exports, so a renamed family cannot silently empty a panel or disarm an alert.

The exported families come from a live exposition (--metrics-file, e.g. `curl .../metrics`;
tests/integration/test_prometheus_scrape.py does that) or from the metrics writer's sources
(--source-dir: the family names passed to counter()/gauge()/histogram()/write_family() in
api/metrics/*.cpp; ctest deploy.monitoring_metric_names). `up` is Prometheus' own.

Usage: check-metric-names.py RULES DASHBOARD (--metrics-file FILE | --source-dir DIR)"""
import argparse
import json
import pathlib
import re
import sys

import yaml

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
PROMETHEUS_OWN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def families_from_exposition(text):
    """{name: type} from the '# TYPE name type' lines."""
    return dict(re.findall(rf"^# TYPE ({NAME}) (\w+)$", text, re.MULTILINE))


def families_from_sources(directory):
    families = {}
    for path in sorted(pathlib.Path(directory).glob("*.cpp")):
        text = path.read_text()
        for kind, name in re.findall(rf'\.(counter|gauge|histogram)\(\s*"({NAME})"', text):
            families[name] = kind
        for counter, name in re.findall(rf'write_family\(\s*out,\s*(true|false),\s*"({NAME})"',
                                        text):
            families[name] = "counter" if counter == "true" else "gauge"
    return families


def metric_names(expr):
    """Metric names a PromQL expression selects: identifiers that are neither label names
    (inside braces or by/on/without lists), functions, keywords nor quoted strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)                           # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                            # range durations
    names = set()
    for match in re.finditer(rf"({NAME})\s*(\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name in {"and", "or", "unless", "bool", "offset"} or name.startswith("$"):
            continue
        if re.fullmatch(r"[0-9.e+-]+", name):
            continue
        names.add(name)
    return names


def rule_expressions(rules_path):
    doc = yaml.safe_load(pathlib.Path(rules_path).read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard_expressions(dashboard_path):
    dash = json.loads(pathlib.Path(dashboard_path).read_text())

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield f"panel {panel['title']!r}", target["expr"]
            yield from walk(panel.get("panels", []))
    yield from walk(dash["panels"])
    for variable in dash.get("templating", {}).get("list", []):
        definition = variable.get("definition", "")
        inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", definition)
        if inner:
            yield f"variable {variable['name']}", inner.group(1)


def exported(name, families):
    if name in families or name in PROMETHEUS_OWN:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and families.get(base) == "histogram":
            return True
    return False


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("rules")
    parser.add_argument("dashboard")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--metrics-file")
    source.add_argument("--source-dir")
    args = parser.parse_args(argv)
    families = (families_from_exposition(pathlib.Path(args.metrics_file).read_text())
                if args.metrics_file else families_from_sources(args.source_dir))
    if len(families) < 10:
        print(f"only {len(families)} families found: the extraction is broken", file=sys.stderr)
        return 1
    problems, checked = [], set()
    for where, expr in [*rule_expressions(args.rules), *dashboard_expressions(args.dashboard)]:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        for name in names:
            checked.add(name)
            if not exported(name, families):
                problems.append(f"{where}: {name} is not exported by the agent")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(checked)} metric names checked against {len(families)} families, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
