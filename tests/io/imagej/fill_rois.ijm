// ImageJ's own rasterisation of an ROI Manager zip: ROI i filled with value i+1 on its slice.
// usage: java -jar ij.jar -batch fill_rois.ijm "ROIS.zip,WIDTH,HEIGHT,SLICES,OUT.tif"
// Prints one line per ROI, "roi INDEX type=TYPE slice=SLICE group=GROUP rgb=R,G,B name=NAME"
// (group and stroke colour as ImageJ holds them; rgb=none when it has no stroke colour), then "count N".
args = split(getArgument(), ",");
setBatchMode(true);
newImage("fill", "16-bit black", parseInt(args[1]), parseInt(args[2]), parseInt(args[3]));
roiManager("reset");
roiManager("Open", args[0]);
n = roiManager("count");
for (i = 0; i < n; i++) {
  roiManager("select", i);
  stroke = Roi.getStrokeColor;
  rgb = "none";
  if (stroke != "") {
    c = Color.toArray(stroke);
    rgb = "" + c[0] + "," + c[1] + "," + c[2];
  }
  print("roi " + i + " type=" + selectionType() + " slice=" + getSliceNumber() + " group=" + Roi.getGroup
        + " rgb=" + rgb + " name=" + Roi.getName);
  setColor(i + 1);
  fill();
}
run("Select None");
saveAs("Tiff", args[4]);
print("count " + n);
