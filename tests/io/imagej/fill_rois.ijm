// ImageJ's own rasterisation of an ROI Manager zip: ROI i filled with value i+1 on its slice.
// usage: java -jar ij.jar -batch fill_rois.ijm "ROIS.zip,WIDTH,HEIGHT,SLICES,OUT.tif"
// Prints one line per ROI: "roi INDEX name=NAME type=TYPE slice=SLICE", then "count N".
args = split(getArgument(), ",");
setBatchMode(true);
newImage("fill", "16-bit black", parseInt(args[1]), parseInt(args[2]), parseInt(args[3]));
roiManager("reset");
roiManager("Open", args[0]);
n = roiManager("count");
for (i = 0; i < n; i++) {
  roiManager("select", i);
  print("roi " + i + " name=" + Roi.getName + " type=" + selectionType() + " slice=" + getSliceNumber());
  setColor(i + 1);
  fill();
}
run("Select None");
saveAs("Tiff", args[4]);
print("count " + n);
