"""Evaluation of frozen features: clustering metrics, weighted kNN, k-means.

``metrics`` scores a clustering against class labels (NMI, ACC, ARI);
``knn`` is the weighted k-nearest-neighbour classifier of Wu et al. (2018);
``kmeans`` clusters features with faiss.
"""
