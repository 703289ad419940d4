"""The papers the report cites, one entry each; templates link to them with ``cite(key, text)``.

The report lists, at its end, exactly the entries its text links to (anchors ``#ref-<key>``), so
every "Eq. 9", "Theorem 1", attack name and author-year mention leads to its full reference.
No URLs: the report stays offline and self-contained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from markupsafe import Markup, escape

__all__ = ["Reference", "REFERENCES", "ATTACK_PAPERS", "cite", "cite_attack", "link_mentions", "cited_keys"]


@dataclass(frozen=True)
class Reference:
    authors: str
    title: str
    venue: str
    mentions: tuple[str, ...] = ()  # author-year spellings linked in free text (flag explanations)


REFERENCES: dict[str, Reference] = {
    "yu2018": Reference(
        "F. Yu, Z. Liu, Y. Wang, X. Chen",
        "Interpreting Adversarial Robustness: A View from Decision Surface in Input Space",
        "arXiv:1810.00144, 2018",
        ("Yu et al. 2018", "Yu et al."),
    ),
    "moosavi2019": Reference(
        "S.-M. Moosavi-Dezfooli, A. Fawzi, J. Uesato, P. Frossard",
        "Robustness via curvature regularization, and vice versa",
        "CVPR 2019",
        ("Moosavi-Dezfooli et al. 2019",),
    ),
    "wen2020": Reference(
        "Y. Wen, S. Li, K. Jia",
        "Towards Understanding the Regularization of Adversarial Robustness on Neural Networks",
        "ICML 2020",
    ),
    "xu2019": Reference(
        "J. Xu, D. A. Yap, V. U. Prabhu", "Understanding Adversarial Robustness Through Loss Landscape Geometries", "2019"
    ),
    "li2018": Reference(
        "H. Li, Z. Xu, G. Taylor, C. Studer, T. Goldstein",
        "Visualizing the Loss Landscape of Neural Nets",
        "NeurIPS 2018",
        ("Li et al. 2018",),
    ),
    "goodfellow2015": Reference(
        "I. Goodfellow, J. Shlens, C. Szegedy", "Explaining and Harnessing Adversarial Examples", "ICLR 2015"
    ),
    "kurakin2017": Reference(
        "A. Kurakin, I. Goodfellow, S. Bengio", "Adversarial examples in the physical world", "ICLR workshop 2017"
    ),
    "madry2018": Reference(
        "A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu",
        "Towards Deep Learning Models Resistant to Adversarial Attacks",
        "ICLR 2018",
    ),
    "carlini2017": Reference(
        "N. Carlini, D. Wagner",
        "Towards Evaluating the Robustness of Neural Networks",
        "IEEE S&P 2017",
        ("Carlini & Wagner 2017",),
    ),
    "moosavi2016": Reference(
        "S.-M. Moosavi-Dezfooli, A. Fawzi, P. Frossard",
        "DeepFool: a simple and accurate method to fool deep neural networks",
        "CVPR 2016",
    ),
    "croce2020aa": Reference(
        "F. Croce, M. Hein",
        "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
        "ICML 2020",
        ("Croce & Hein 2020",),
    ),
    "croce2020fab": Reference(
        "F. Croce, M. Hein", "Minimally distorted adversarial examples with a fast adaptive boundary attack", "ICML 2020"
    ),
    "andriushchenko2020": Reference(
        "M. Andriushchenko, F. Croce, N. Flammarion, M. Hein",
        "Square Attack: a query-efficient black-box adversarial attack via random search",
        "ECCV 2020",
    ),
    "uesato2018": Reference(
        "J. Uesato, B. O'Donoghue, A. van den Oord, P. Kohli",
        "Adversarial Risk and the Dangers of Evaluating Against Weak Attacks",
        "ICML 2018",
        ("Uesato et al. 2018",),
    ),
    "athalye2018": Reference(
        "A. Athalye, N. Carlini, D. Wagner",
        "Obfuscated Gradients Give a False Sense of Security: Circumventing Defenses to Adversarial Examples",
        "ICML 2018",
        ("Athalye et al. 2018",),
    ),
    "tramer2018": Reference(
        "F. Tramèr, A. Kurakin, N. Papernot, I. Goodfellow, D. Boneh, P. McDaniel",
        "Ensemble Adversarial Training: Attacks and Defenses",
        "ICLR 2018",
        ("Tramèr et al. 2018",),
    ),
    "gowal2018": Reference(
        "S. Gowal, K. Dvijotham, R. Stanforth, R. Bunel, C. Qin, J. Uesato, R. Arandjelovic, T. Mann, P. Kohli",
        "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models",
        "arXiv:1810.12715, 2018",
        ("Gowal et al. 2018",),
    ),
    "zhang2018": Reference(
        "H. Zhang, T.-W. Weng, P.-Y. Chen, C.-J. Hsieh, L. Daniel",
        "Efficient Neural Network Robustness Certification with General Activation Functions",
        "NeurIPS 2018",
        ("Zhang et al. 2018",),
    ),
    "zhang2020": Reference(
        "H. Zhang, H. Chen, C. Xiao, S. Gowal, R. Stanforth, B. Li, D. Boning, C.-J. Hsieh",
        "Towards Stable and Efficient Training of Verifiably Robust Neural Networks",
        "ICLR 2020",
        ("Zhang et al. 2020",),
    ),
    "xu2021": Reference(
        "K. Xu, H. Zhang, S. Wang, Y. Wang, S. Jana, X. Lin, C.-J. Hsieh",
        "Fast and Complete: Enabling Complete Neural Network Verification with Rapid and Massively Parallel Incomplete Verifiers",
        "ICLR 2021",
        ("Xu et al. 2021",),
    ),
    "tjeng2019": Reference(
        "V. Tjeng, K. Xiao, R. Tedrake",
        "Evaluating Robustness of Neural Networks with Mixed Integer Programming",
        "ICLR 2019",
        ("Tjeng et al. 2019",),
    ),
    "clopper1934": Reference(
        "C. J. Clopper, E. S. Pearson",
        "The use of confidence or fiducial limits illustrated in the case of the binomial",
        "Biometrika 26(4), 1934",
    ),
    "mcnemar1947": Reference(
        "Q. McNemar",
        "Note on the sampling error of the difference between correlated proportions or percentages",
        "Psychometrika 12(2), 1947",
    ),
}

# The paper of each built-in attack (by registry name), for links from attack labels.
ATTACK_PAPERS = {
    "fgsm": "goodfellow2015",
    "bim": "kurakin2017",
    "least-likely": "kurakin2017",
    "pgd": "madry2018",
    "cw-pgd": "carlini2017",
    "cw-l2": "carlini2017",
    "deepfool": "moosavi2016",
    "apgd-ce": "croce2020aa",
    "apgd-dlr": "croce2020aa",
    "apgd-t": "croce2020aa",
    "fab-t": "croce2020fab",
    "square": "andriushchenko2020",
    "spsa": "uesato2018",
}


def cite(key: str, text: str | None = None) -> Markup:
    """``<a href="#ref-key">text</a>`` (text defaults to the entry's short author-year form)."""
    ref = REFERENCES[key]
    label = (
        text if text is not None else f"{ref.authors.split(',')[0].split()[-1]} et al." if "," in ref.authors else ref.authors
    )
    return Markup('<a class="cite" href="#ref-{}">{}</a>').format(key, label)


def cite_attack(label: str) -> Markup:
    """An attack label, linked to its paper when it is a built-in attack (escaped either way)."""
    key = ATTACK_PAPERS.get(str(label).split("[")[0])
    return cite(key, str(label)) if key else Markup(escape(label))


def _linked(key: str, match: re.Match[str]) -> str:
    return str(cite(key, match.group(0)))


def link_mentions(html: str) -> Markup:
    """Already-escaped HTML text with each known author-year mention linked to its entry."""
    for key, ref in REFERENCES.items():
        for mention in ref.mentions:
            pattern = re.escape(str(escape(mention)))
            html = re.sub(rf"(?<![\w>]){pattern}(?![^<]*</a>)", partial(_linked, key), html)
    return Markup(html)


def cited_keys(html: str) -> list[str]:
    """The entries a rendered page links to, in order of first citation."""
    return list(dict.fromkeys(k for k in re.findall(r'href="#ref-([a-z0-9]+)"', html) if k in REFERENCES))
