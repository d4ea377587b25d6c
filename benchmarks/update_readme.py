"""Copy the result tables (results/*.md) into README.md between the results markers.

    python benchmarks/update_readme.py
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["train_step", "mixed_tasks", "scaling", "eval_throughput", "distill_cache", "gpu"]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    parts = []
    for name in ORDER:
        md = HERE / "results" / f"{name}.md"
        if not md.is_file():
            parts.append(f"### {name}\n\nnot run yet: `python benchmarks/{name}.py`\n")
            continue
        body = md.read_text().strip().splitlines()
        body = ["#" * min(6, len(l) - len(l.lstrip("#")) + 2) + l.lstrip("#") if l.startswith("#") else l
                for l in body]  # demote headings under the README's "Results" section
        png = HERE / "results" / f"{name}.png"
        if png.is_file():
            body += ["", f"![{name}](results/{name}.png)"]
        parts.append("\n".join(body) + "\n")
    readme.write_text(head + BEGIN + "\n\n" + "\n".join(parts) + "\n" + END + tail)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
