// What a Fiji user does with a prediction folder: open frames.tif, then a RoiSet on it.
// usage: java -jar ij.jar -batch open_frames.ijm "FRAMES.tif,ROIS.zip"
// Prints "stack slices=N width=W height=H bits=B", then "roi INDEX slice=SLICE" per ROI.
args = split(getArgument(), ",");
setBatchMode(true);
open(args[0]);
print("stack slices=" + nSlices + " width=" + getWidth() + " height=" + getHeight() + " bits=" + bitDepth());
roiManager("reset");
roiManager("Open", args[1]);
for (i = 0; i < roiManager("count"); i++) {
  roiManager("select", i);
  print("roi " + i + " slice=" + getSliceNumber());
}
