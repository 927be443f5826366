"""What the chest X-ray bundle says about itself: its data, licence, citation and intended use."""

from models.training.recipe import Identity

EXAM = "chest-xray-pneumonia"
VERSION = "3.2.0"
TITLE = "Pediatric chest X-ray pneumonia triage (research)"
LICENCE = "CC BY 4.0"
DISCLAIMER = "Research use only - not for clinical diagnosis."
DATASET = ("Kermany et al. 2018 chest X-ray images (pediatric, Guangzhou Women and Children's Medical "
           "Center), Mendeley Data v2, official TRAIN split only")
CITATION = ("Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
            "Images for Classification. Mendeley Data, v2, 2018. doi:10.17632/rscbjbr9sj.2; "
            "Kermany DS et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep "
            "Learning. Cell 172(5):1122-1131, 2018. doi:10.1016/j.cell.2018.02.010")
INTENDED_USE = ("Research prototype: flags frontal pediatric chest radiographs (CR/DX) that look like "
                "pneumonia for earlier review (triage ordering). It does not diagnose and does not replace "
                "a reader.")
IDENTITY = Identity(title=TITLE, dataset=DATASET, licence=LICENCE, citation=CITATION, intended_use=INTENDED_USE,
                    disclaimer=DISCLAIMER)
