// ImageJ writes ROIs of every area type it has, and its own fill of each.
// usage: java -jar ij.jar -batch make_rois.ijm "OUT_DIR"
// Writes OUT_DIR/RoiSet.zip (ROI i on slice i+1) and OUT_DIR/masks.tif (ROI i filled with i+1).
out = getArgument();
setBatchMode(true);
newImage("rois", "16-bit black", 160, 120, 12);
roiManager("reset");
function keep(slice) {
  setSlice(slice);
  Roi.setPosition(slice);
  roiManager("add");
}
makeOval(10, 12, 31, 17);                  keep(1);   // integer oval
makeOval(60.5, 20.25, 33.3, 21.7);         keep(2);   // sub-pixel oval
makeOval(100, 70, 8, 8);                   keep(3);   // small circle
makeRectangle(5, 60, 20, 11);              keep(4);   // integer rectangle
makeRectangle(40.5, 70.25, 20.5, 10.75);   keep(5);   // sub-pixel rectangle
makeRectangle(70, 80, 30, 20, 8);          keep(6);   // rounded rectangle
makeEllipse(20, 100, 60, 80, 0.5);         keep(7);   // rotated ellipse
makeRotatedRectangle(90, 20, 140, 60, 15); keep(8);   // rotated rectangle
makeOval(30, 20, 60, 60);                            // composite with a hole
setKeyDown("alt"); makeOval(45, 35, 30, 30); setKeyDown("none");
keep(9);
makeRectangle(10, 10, 20, 20);                       // composite of two pieces
setKeyDown("shift"); makeOval(100, 60, 30, 25); setKeyDown("none");
keep(10);
makePolygon(20.5, 30.25, 70.75, 25.5, 60.5, 90.5);   // composite of a polygon and an oval
setKeyDown("shift"); makeOval(80, 50, 25.5, 30.5); setKeyDown("none");
keep(11);
makeLine(10, 10, 50, 60);                  keep(12);  // a line: not an area
roiManager("save", out + "/RoiSet.zip");
n = roiManager("count");
for (i = 0; i < n; i++) {
  roiManager("select", i);
  print("roi " + i + " type=" + selectionType() + " slice=" + getSliceNumber());
  if (selectionType() < 5 || selectionType() == 9) {
    setColor(i + 1);
    fill();
  }
}
run("Select None");
saveAs("Tiff", out + "/masks.tif");
print("count " + n);
