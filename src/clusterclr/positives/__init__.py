"""Who counts as a positive.

Every contrastive method in clusterclr differs from the others mainly in the
answer to one question: which pairs of views should be pulled together? Each
module here answers it as a boolean mask over the views of a batch, and the
losses take that mask. Instance discrimination (SimCLR) answers "views of the
same image"; semantic positive pairs and cluster mates widen the mask.
"""
