"""Answer checks for reward.answer_check tests: "tests.helpers.answer_checks:<name>"."""


def last_word_matches(row, prediction: str) -> bool:
    """Right when the prediction's last word is the row's solution's last word."""
    return prediction.split()[-1:] == row.solution.split()[-1:]


NOT_CALLABLE = 3
