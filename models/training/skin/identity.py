"""What the skin-lesion bundle says about itself: its data, licence, citation and intended use."""

from models.training.recipe import Identity

EXAM = "skin-lesion-triage"
VERSION = "3.3.0"
TITLE = "Skin lesion triage from dermoscopy (research, non-commercial)"

LICENCE = "CC BY-NC 4.0"
DISCLAIMER = "Non-commercial use only: trained on HAM10000, licensed CC BY-NC 4.0. Not for diagnosis."
DATASET = ("HAM10000 (Tschandl et al. 2018), the ISIC 2018 Task 3 training set, one image per lesion "
           "(5,984 of its 10,015 images), 224x224 RGB as distributed")
CITATION = ("Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source "
            "dermatoscopic images of common pigmented skin lesions. Sci Data 5:180161, 2018. "
            "doi:10.1038/sdata.2018.161; Codella N et al. Skin Lesion Analysis Toward Melanoma Detection 2018 "
            "(ISIC). arXiv:1902.03368")
INTENDED_USE = ("Research prototype, non-commercial: orders dermoscopy images of pigmented skin lesions for "
                "review, flagging those that look like melanoma, basal cell carcinoma or actinic keratosis / "
                "intraepithelial carcinoma for referral. It does not diagnose and does not replace a "
                "dermatologist or a biopsy.")
LABEL_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma", "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis", "df": "dermatofibroma", "mel": "melanoma", "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
IDENTITY = Identity(title=TITLE, dataset=DATASET, licence=LICENCE, citation=CITATION, intended_use=INTENDED_USE,
                    disclaimer=DISCLAIMER, label_names=LABEL_NAMES)
