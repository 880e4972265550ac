"""Trust metrics of attribution maps, one concern per module (used by ``audit.stages.trust``).

* ``similarity``: Spearman rank correlation and SSIM between two stacks of maps.
* ``faithfulness``: deletion and insertion curves and their AUC (blur baseline).
* ``sanity``: cascading randomization of the model's layers and the random-logit test.
* ``agreement``: rank agreement between methods, per image and per finding.

The IG completeness gap is computed where the images already are: the attribute
stage stores it beside IG's maps (``IntegratedGradients.explain_with_gap``).
"""
