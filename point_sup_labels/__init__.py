"""point_sup_labels: making P_N point labels (Cheng, Parkhi, Kirillov, CVPR 2022), apart from training.

A P_N annotation is an object's box plus N points sampled uniformly inside it, each labelled
object or background. This package makes and checks such labels; :mod:`point_sup` trains from
them on Detectron2. It imports neither torch nor Detectron2, so the conversion and annotation tools
start in a fraction of a second. One concept per module:

* :mod:`.sampling`: §3.1, the points sampled in a box (pixel-index convention, random streams);
* :mod:`.polygon_labels`, :mod:`.rle_labels`: a point's label read exactly from a polygon or RLE
  mask, as pycocotools rasterizes it;
* :mod:`.label_noise`: §3.3.1, flipped labels (random or near the boundary);
* :mod:`.time_model`: the paper's annotation-time model (7 s per box, 0.9 s per point, 79.2 s per
  polygon);
* :mod:`.simulate`: the simulator's one pipeline (chunks read, labelled, joined, noise added);
  :mod:`.sharded`: the same with the file parsed in shards by the workers;
* :mod:`.coco_format`: the COCO-format reader and validator; :mod:`.point_fields`: the P_N
  fields' rules; :mod:`.point_file`: writing P_N files;
* :mod:`.budget`: choosing images to label for a given annotation time;
* :mod:`.annotation`: the browser tool with which people label points;
* :mod:`.formats`: boxes and points from and back to CVAT, Label Studio and labelme;
* :mod:`.file_io`, :mod:`.process`: atomic outputs, worker processes and stop signals.
"""

__version__ = "0.1.0"
