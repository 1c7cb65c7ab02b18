"""The deepfake-detector benchmark: real-vs-generated classifiers trained on genlab's own
generators (the ``detector`` family, trained by the one loop), their evaluation with robustness
to laundering (JPEG, resizing, blur), the cross-generator AUC matrix, and the adversarial loop in
which a generator is fine-tuned against a frozen detector.

- :mod:`genlab.detect.fakes`: where fake images come from (a generator run or an ``.npz``), by seed;
- :mod:`genlab.detect.scores`: ROC AUC, TPR at a fixed false-positive rate, accuracy;
- :mod:`genlab.detect.evaluate`: a detector against real and fake images, and the laundering transforms;
- :mod:`genlab.detect.bench`: `genlab detect train | matrix | loop` as functions.
"""
